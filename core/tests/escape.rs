//! The escape suite: each attempt runs in the default sandbox and must be denied; each has a
//! negative control showing the same attempt succeeding with the protection turned off, so no
//! check passes vacuously. Fork bombs and memory hogs are in the VM lane (vm_limits.rs), never
//! on the host.

mod common;

use std::path::Path;

use common::*;
use rsandbox::{Mount, Network, RunResult, Seccomp, Spec, Want};

fn py(script: &str) -> Option<Spec> {
    if !Path::new("/usr/bin/python3").exists() {
        skip("python3 is needed for this attempt");
        return None;
    }
    let mut spec = Spec::new(["python3", "-c", script]);
    spec.timeout = Some(30.0);
    Some(spec)
}

fn said(r: &RunResult) -> String {
    format!("{}{}", out(r), err(r))
}

#[test]
fn host_files_stay_out_of_reach() {
    let secret_dir = TempDir::new("secret");
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let p = secret.display().to_string();
    let attempts = format!(
        "cat {p}; cat /proc/1/root{p}; cd /tmp && cat /proc/self/cwd/../..{p}; ln -s {p} /tmp/l && cat /tmp/l; cat /../../..{p}; true"
    );
    let r = run(&sh(&attempts));
    assert!(!said(&r).contains("s3cret"), "host file read: {}", said(&r));
    // Control: with the directory bound in, the same path reads.
    let mut spec = sh(&format!("cat {p}"));
    spec.filesystem.mounts.push(Mount::Bind {
        source: secret_dir.path().into(),
        destination: secret_dir.path().display().to_string(),
        readonly: true,
    });
    assert_eq!(out(&run(&spec)), "s3cret\n");
}

#[test]
fn open_by_handle_at_is_refused() {
    // name_to_handle_at/open_by_handle_at let a process open inodes outside its root.
    let script = "import ctypes,os; libc=ctypes.CDLL(None,use_errno=True); buf=ctypes.create_string_buffer(128); \
                  ctypes.c_uint.from_buffer(buf).value=120; mid=ctypes.c_int(); \
                  r=libc.syscall(303, -100, b'/etc', buf, ctypes.byref(mid), 0); print(r, ctypes.get_errno())";
    let Some(mut spec) = py(script) else { return };
    let r = run(&spec);
    assert_eq!(
        out(&r).trim(),
        format!("-1 {}", libc::EPERM),
        "{}",
        said(&r)
    );
    // Control: without seccomp the kernel answers (a handle, or another errno than EPERM's policy).
    spec.security.seccomp = Seccomp::None;
    let r = run(&spec);
    assert!(out(&r).trim().starts_with('0'), "{}", said(&r));
}

#[test]
fn read_only_mounts_cannot_be_written_nor_remounted() {
    let r = run(&sh(
        "echo x > /usr/rsbx 2>&1; mount -o remount,rw /usr 2>&1; echo x > /usr/rsbx 2>&1; true",
    ));
    let text = said(&r);
    assert!(text.contains("Read-only file system"), "{text}");
    assert!(!Path::new("/usr/rsbx").exists());
    // Control: a read-write bind takes the write.
    let dir = TempDir::new("rw");
    let mut spec = sh("echo x > /data/f && echo wrote");
    spec.filesystem.mounts.push(Mount::Bind {
        source: dir.path().into(),
        destination: "/data".into(),
        readonly: false,
    });
    assert_eq!(out(&run(&spec)), "wrote\n");
}

fn root_with_all(script: &str) -> Spec {
    let mut spec = sh(script);
    spec.user.uid = Some(0);
    spec.user.gid = Some(0);
    spec
}

fn unprotected(mut spec: Spec) -> Spec {
    spec.security.seccomp = Seccomp::None;
    spec.security.landlock.want = Want::Off;
    spec.security.capabilities = vec!["CAP_SYS_ADMIN".into(), "CAP_SYS_CHROOT".into()];
    spec
}

#[test]
fn new_mounts_chroot_and_pivot_root_are_refused() {
    let script = "mkdir -p /tmp/m; mount -t tmpfs x /tmp/m && echo mounted; chroot / /bin/true && echo chrooted; true";
    let r = run(&root_with_all(script));
    assert!(
        !said(&r).contains("mounted") && !said(&r).contains("chrooted"),
        "{}",
        said(&r)
    );
    // Control: root inside with the protections off can do both (inside its own namespaces).
    let r = run(&unprotected(root_with_all(script)));
    assert!(
        out(&r).contains("mounted") && out(&r).contains("chrooted"),
        "{}",
        said(&r)
    );
}

#[test]
fn host_processes_can_be_neither_seen_nor_signalled() {
    let mut host = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = host.id();
    let script = format!(
        "test -e /proc/{pid} && echo seen; kill -0 {pid} 2>/dev/null && echo signalled; true"
    );
    let r = run(&sh(&script));
    assert_eq!(out(&r), "", "{}", said(&r));
    // Sharing the PID namespace shows it; Landlock's scoping (ABI 6) still keeps signals from
    // reaching it, and the report says which.
    let mut spec = sh(&script);
    spec.namespaces.pid = Want::Off;
    spec.filesystem.proc = true;
    let r = run(&spec);
    let landlock = r.report.feature("landlock").unwrap().detail.clone();
    let scoped = landlock.contains("processes (signals) of the host stay out of reach");
    assert!(
        scoped || landlock.contains("SKIPPED") || landlock.contains("Landlock is not"),
        "{landlock}"
    );
    assert!(out(&r).contains("seen"), "{}", said(&r));
    assert_eq!(
        out(&r).contains("signalled"),
        !scoped,
        "{landlock}: {}",
        said(&r)
    );
    // Control: without Landlock, the shared PID namespace reaches it.
    spec.security.landlock.want = Want::Off;
    let r = run(&spec);
    host.kill().ok();
    host.wait().ok();
    assert!(
        out(&r).contains("seen") && out(&r).contains("signalled"),
        "{}",
        said(&r)
    );
}

#[test]
fn ptrace_of_other_processes_is_refused() {
    // PTRACE_ATTACH (16) on the init: a different privilege level even inside the sandbox.
    let script = "import ctypes; libc=ctypes.CDLL(None,use_errno=True); r=libc.ptrace(16,1,0,0); print(r, ctypes.get_errno())";
    let Some(spec) = py(script) else { return };
    let r = run(&spec);
    let text = out(&r);
    assert!(text.starts_with("-1 "), "attached: {}", said(&r));
    // Control: a child of its own can be traced (ptrace itself is not broken).
    let Some(spec) = py(
        "import ctypes,os,signal; libc=ctypes.CDLL(None,use_errno=True)\n\
         pid=os.fork()\n\
         if pid==0:\n    import time; time.sleep(5); os._exit(0)\n\
         print(libc.ptrace(16,pid,0,0)); os.kill(pid, signal.SIGKILL)",
    ) else {
        return;
    };
    assert_eq!(
        out(&run(&spec)).trim(),
        "0",
        "ptrace of an own child failed"
    );
}

/// The init (pid 1) runs without the command's seccomp filter and Landlock domain: the command
/// must not reach it through ptrace or its /proc files (its descriptors, its memory, which in a
/// start that copies the caller is the caller's) even where Landlock, whose scoping also keeps
/// it out, is off, and even keeping CAP_SYS_PTRACE (which also makes the start copy the
/// caller). Control: the same probes reach a process of the command's own.
#[test]
fn the_init_is_out_of_reach_without_landlock() {
    let probe = "import ctypes, os, sys, time\n\
                 libc = ctypes.CDLL(None, use_errno=True)\n\
                 target = int(sys.argv[1]) if len(sys.argv) > 1 else 1\n\
                 if target == 0:\n    target = os.fork()\n    \
                 if target == 0:\n        time.sleep(5); os._exit(0)\n    time.sleep(0.2)\n\
                 def reach(what, f):\n    \
                 try:\n        f(); print(what, 'reached')\n    \
                 except OSError as e:\n        print(what, 'refused', e.errno)\n\
                 reach('environ', lambda: open('/proc/%d/environ' % target, 'rb').read())\n\
                 def fds():\n    \
                 names = os.listdir('/proc/%d/fd' % target)\n    \
                 [os.close(os.open('/proc/%d/fd/%s' % (target, n), os.O_RDONLY)) for n in names]\n    \
                 if not names: raise OSError(0, 'none')\n\
                 reach('fd', fds)\n\
                 reach('mem', lambda: open('/proc/%d/mem' % target, 'rb'))\n\
                 r = libc.ptrace(16, target, 0, 0)\n\
                 print('ptrace', 'reached' if r == 0 else 'refused')";
    for keep_ptrace in [false, true] {
        for target in ["1", "0"] {
            let Some(mut spec) = py(probe) else { return };
            spec.process.args.push(target.into());
            spec.security.landlock.want = Want::Off;
            if keep_ptrace {
                spec.security.capabilities = vec!["CAP_SYS_PTRACE".into()];
            }
            let r = run(&spec);
            let text = out(&r);
            assert_eq!(
                text.lines().count(),
                4,
                "{keep_ptrace} {target}: {}",
                said(&r)
            );
            for line in text.lines() {
                if target == "1" {
                    assert!(
                        line.contains("refused"),
                        "{keep_ptrace}: init {line}: {}",
                        said(&r)
                    );
                } else {
                    assert!(
                        line.ends_with("reached"),
                        "{keep_ptrace}: own child {line}: {}",
                        said(&r)
                    );
                }
            }
        }
    }
}

#[test]
fn loopback_of_the_host_is_unreachable_without_host_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!("import socket; s=socket.socket(); s.settimeout(3)\ntry:\n    s.connect(('127.0.0.1',{port})); print('connected')\nexcept Exception as e: print('refused', e)");
    let Some(mut spec) = py(&script) else { return };
    assert!(out(&run(&spec)).starts_with("refused"));
    // Control: with the host's network the listener answers.
    spec.network = Network::Host;
    assert_eq!(out(&run(&spec)).trim(), "connected");
}

#[test]
fn host_abstract_unix_sockets_are_unreachable() {
    let name = format!("rsbx-{}", marker());
    let listener = std::os::unix::net::UnixListener::bind_addr(
        &<std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name.as_bytes()).unwrap(),
    )
    .unwrap();
    let script = format!("import socket; s=socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('\\0{name}'); print('connected')\nexcept Exception as e: print('refused', e)");
    let Some(mut spec) = py(&script) else { return };
    assert!(
        out(&run(&spec)).starts_with("refused"),
        "default sandbox reached it"
    );
    // With the host's network, Landlock's scoping (ABI >= 6) still keeps it out.
    spec.network = Network::Host;
    let landlock_scopes = rsandbox::doctor().check("landlock").is_some_and(|c| {
        c.detail
            .trim_start_matches("ABI ")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
            >= 6
    });
    let r = run(&spec);
    if landlock_scopes {
        assert!(
            out(&r).starts_with("refused"),
            "host network + Landlock scope: {}",
            said(&r)
        );
    }
    // Control: host network without Landlock connects.
    spec.security.landlock.want = Want::Off;
    assert_eq!(out(&run(&spec)).trim(), "connected");
    drop(listener);
}

#[test]
fn keyrings_and_modules_are_refused() {
    // add_key (248) and finit_module (313): EPERM from the filter.
    let script = "import ctypes; libc=ctypes.CDLL(None,use_errno=True)\n\
                  r=libc.syscall(248,b'user',b'k',b'v',1,ctypes.c_int(-2)); print('add_key', r, ctypes.get_errno())\n\
                  r=libc.syscall(313,0,b'',0); print('finit_module', r, ctypes.get_errno())";
    let Some(mut spec) = py(script) else { return };
    let r = run(&spec);
    assert!(
        out(&r).contains(&format!("add_key -1 {}", libc::EPERM)),
        "{}",
        said(&r)
    );
    assert!(
        out(&r).contains(&format!("finit_module -1 {}", libc::EPERM)),
        "{}",
        said(&r)
    );
    // Control: without the filter add_key reaches the kernel (and succeeds in the session keyring),
    // and finit_module fails differently (EBADF for fd 0's contents, or EPERM from the kernel's
    // own capability check: the module load itself can never succeed unprivileged).
    spec.security.seccomp = Seccomp::None;
    let r = run(&spec);
    assert!(
        !out(&r).contains(&format!("add_key -1 {}", libc::EPERM)),
        "{}",
        said(&r)
    );
}

/// io_uring (a second path to many syscalls, outside the filter's view) and open_tree_attr (a
/// copy of a mount without its read-only flag or masks, like open_tree) are refused by the
/// default profile, even to root inside keeping CAP_SYS_ADMIN. Control: without the filter the
/// kernel takes both.
#[test]
fn io_uring_and_open_tree_attr_are_refused() {
    // io_uring_setup(1, params) and open_tree_attr(AT_FDCWD, "/", OPEN_TREE_CLONE, NULL, 0).
    let script = "import ctypes; libc=ctypes.CDLL(None,use_errno=True)\n\
                  params=ctypes.create_string_buffer(120)\n\
                  r=libc.syscall(425,1,params); print('io_uring_setup', r, ctypes.get_errno())\n\
                  r=libc.syscall(467,-100,b'/',1,None,0); print('open_tree_attr', r, ctypes.get_errno())";
    let Some(mut spec) = py(script) else { return };
    spec.user.uid = Some(0);
    spec.user.gid = Some(0);
    spec.security.capabilities = vec!["CAP_SYS_ADMIN".into()];
    let r = run(&spec);
    for call in ["io_uring_setup", "open_tree_attr"] {
        assert!(
            out(&r).contains(&format!("{call} -1 {}", libc::EPERM)),
            "{call}: {}",
            said(&r)
        );
    }
    spec.security.seccomp = Seccomp::None;
    let r = run(&spec);
    let io_uring_open = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map_or(true, |v| v.trim() == "0");
    if io_uring_open {
        assert!(
            !out(&r).contains("io_uring_setup -1"),
            "io_uring refused without the filter: {}",
            said(&r)
        );
    }
    assert!(
        !out(&r).contains(&format!("open_tree_attr -1 {}", libc::EPERM)),
        "open_tree_attr refused without the filter: {}",
        said(&r)
    );
}

/// The caller's session keyring (its keys: credentials, tokens) is out of reach of a command
/// whose seccomp profile allows the keyring calls: it gets an empty session keyring of its own.
/// Control: a plain child of the same caller thread finds the key.
#[test]
fn the_callers_keys_are_out_of_reach_without_the_default_profile() {
    // This thread's own session keyring (creds are per thread), so nothing is added to the
    // session of whoever runs the tests.
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL) and add_key with NUL-terminated strings.
    let key = unsafe {
        libc::syscall(libc::SYS_keyctl, 1, std::ptr::null::<libc::c_char>());
        libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            c"rsbx-test-key".as_ptr(),
            c"hunter2".as_ptr(),
            7usize,
            -3i32, // KEY_SPEC_SESSION_KEYRING
        )
    };
    if key < 0 {
        return skip(&format!(
            "cannot add a key here: {}",
            std::io::Error::last_os_error()
        ));
    }
    let script = "import ctypes; libc=ctypes.CDLL(None,use_errno=True)\n\
                  r=libc.syscall(249,b'user',b'rsbx-test-key',None,0)\n\
                  print('found' if r > 0 else 'absent %d' % ctypes.get_errno())";
    let Some(mut spec) = py(script) else { return };
    spec.security.seccomp = Seccomp::None;
    let r = run(&spec);
    assert_eq!(
        out(&r),
        format!("absent {}\n", libc::ENOKEY),
        "{}",
        said(&r)
    );
    let keyring = r.report.feature("keyring").expect("a keyring entry");
    assert_eq!(keyring.status, rsandbox::Status::Enforced, "{keyring:?}");
    let control = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&control.stdout), "found\n");
}

/// personality: flags that weaken memory protections are refused in any value (bit 31 set or
/// not); the query (0xffffffff), which sets nothing, answers. Control: without the filter the
/// flag is set.
#[test]
fn personality_flags_are_refused_and_the_query_answers() {
    let script = "import ctypes; libc=ctypes.CDLL(None,use_errno=True)\n\
                  q=libc.syscall(135,0xffffffff); print('query', q >= 0)\n\
                  r=libc.syscall(135,0x80400000); print('set', r, ctypes.get_errno())";
    let Some(mut spec) = py(script) else { return };
    let r = run(&spec);
    assert_eq!(
        out(&r),
        format!("query True\nset -1 {}\n", libc::EPERM),
        "{}",
        said(&r)
    );
    spec.security.seccomp = Seccomp::None;
    let r = run(&spec);
    assert!(out(&r).starts_with("query True\nset 0 "), "{}", said(&r));
}

#[test]
fn nested_user_namespaces_cannot_regain_capabilities() {
    let script = "import ctypes; libc=ctypes.CDLL(None,use_errno=True)\n\
                  print('unshared' if libc.unshare(0x10000000) == 0 else 'refused %d' % ctypes.get_errno())";
    let Some(mut spec) = py(script) else { return };
    assert_eq!(out(&run(&spec)).trim(), format!("refused {}", libc::EPERM));
    spec.security.allow_nested_userns = true;
    assert_eq!(out(&run(&spec)).trim(), "unshared");
}

#[test]
fn setuid_binaries_gain_nothing() {
    // no_new_privs: a setuid-root binary runs with the caller's ids.
    let Some(su) = ["/usr/bin/su", "/bin/su", "/usr/bin/newuidmap"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        return skip("no setuid binary on this host");
    };
    let r = run(&sh(&format!(
        "grep NoNewPrivs /proc/self/status; {su} --help >/dev/null 2>&1; id -u"
    )));
    assert!(out(&r).contains("NoNewPrivs:\t1"), "{}", said(&r));
    assert_eq!(out(&r).lines().last().unwrap(), my_uid().to_string());
}

#[test]
fn tiocsti_into_the_callers_terminal_fails() {
    // A pty stands in for the caller's terminal; the sandbox gets it as stdin.
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    // SAFETY: openpty fills two descriptors; the name/termios/winsize pointers may be null.
    let ok = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if ok != 0 {
        return skip("no pty available");
    }
    let script = "import fcntl,termios,sys\ntry:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x'); print('injected')\nexcept OSError as e: print('refused', e.errno)";
    let Some(mut spec) = py(script) else { return };
    spec.process.stdin = rsandbox::Stdio::Fd(slave);
    let r = run(&spec);
    assert!(out(&r).starts_with("refused"), "{}", said(&r));
    // SAFETY: closing the pty pair opened above.
    unsafe {
        libc::close(master);
        libc::close(slave);
    }
}

#[test]
fn proc_sys_is_read_only_and_sensitive_proc_files_are_masked() {
    let script = "echo 1 > /proc/sys/net/ipv4/ip_forward; grep -c -e ' /proc/timer_list ' -e ' /proc/sys proc ro,' /proc/self/mounts";
    let r = run(&root_with_all(script));
    assert!(err(&r).contains("Read-only file system"), "{}", said(&r));
    assert_eq!(
        out(&r),
        "2\n",
        "timer_list masked and /proc/sys read-only: {}",
        said(&r)
    );
    // Control: unmasked, neither mount exists and the write is no longer refused as read-only.
    let mut spec = unprotected(root_with_all(script));
    spec.security.mask_proc = false;
    let r = run(&spec);
    assert_eq!(out(&r), "0\n", "{}", said(&r));
    assert!(!err(&r).contains("Read-only file system"), "{}", said(&r));
    // The report says the masks are off, and what that means when the command is the host's
    // root (a root caller's sandbox maps it there).
    let masks = r.report.feature("proc-masks").expect("a proc-masks entry");
    assert_eq!(masks.status, rsandbox::Status::Off, "{masks:?}");
    let host_root = my_uid() == 0;
    assert_eq!(
        masks.detail.contains("host's uid 0"),
        host_root,
        "{masks:?}"
    );
    let on_host = r.report.feature("unprivileged-on-host");
    assert_eq!(on_host.is_some(), host_root, "{on_host:?}");
}

#[test]
fn the_cgroup_cannot_be_left() {
    // No /sys in the default view, and /proc/self/cgroup is read-only by nature.
    let r = run(&sh("ls /sys 2>&1; echo $$ > /sys/fs/cgroup/cgroup.procs 2>&1; echo x > /proc/self/cgroup 2>&1; true"));
    let text = said(&r);
    assert!(
        text.contains("No such file") || text.contains("nonexistent"),
        "{text}"
    );
}

/// A rootfs that another sandbox writes can have its /proc replaced while a sandbox on it is
/// built (here a link flipped between two directories as fast as a shell can): every start either
/// has every /proc mask on the proc it got, or fails; none gets a proc with masks missing.
/// Control: without the flipping, a start has them all.
#[test]
fn a_proc_replaced_during_setup_never_leaves_masks_off() {
    let Some(dir) = busybox_rootfs() else { return };
    let root = dir.path();
    std::fs::remove_dir(root.join("proc")).unwrap();
    for d in ["p1", "p2"] {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("p1", root.join("proc")).unwrap();
    for tool in ["ln", "grep", "mv", "cut"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    let on = |writable: bool, script: &str| {
        let mut spec = Spec::new(["/bin/sh", "-c", script]);
        spec.filesystem.root = rsandbox::Root::Directory {
            path: root.to_path_buf(),
            writable,
        };
        spec.timeout = Some(60.0);
        spec
    };
    // The masks on this sandbox's proc, wherever it is.
    let count = on(
        false,
        "d=/proc; [ -L /proc ] && for d in /p1 /p2; do [ -e $d/self ] && break; done; \
         at=$(grep ' - proc ' $d/self/mountinfo | cut -d' ' -f5); \
         grep -c \" $at/\" $d/self/mountinfo",
    );
    let full: usize = out(&run(&count)).trim().parse().expect("a count");
    assert!(full >= 5, "masks without flipping: {full}");

    let mut flipper = rsandbox::spawn(&on(
        true,
        // (Renamed into place: the name is never missing, so no start makes it a directory.)
        "cd /; while :; do ln -sfn p2 new; mv -fT new proc; ln -sfn p1 new; mv -fT new proc; done",
    ))
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (mut started, mut refused) = (0, 0);
    for _ in 0..150 {
        match rsandbox::run(&count) {
            Ok(r) if r.status.success() => {
                started += 1;
                let got: usize = out(&r).trim().parse().unwrap_or(0);
                assert_eq!(got, full, "a start with masks missing: {}", said(&r));
            }
            Ok(r) => panic!("the count failed: {}", said(&r)),
            Err(_) => refused += 1,
        }
    }
    flipper.kill(libc::SIGKILL).unwrap();
    flipper.wait().unwrap();
    assert!(started > 0, "no start succeeded ({refused} refused)");
}
