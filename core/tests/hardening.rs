//! seccomp profiles, Landlock, capabilities and rlimits: each on by default, each proven from
//! inside, each with a control that shows the difference when it is off.

mod common;

use common::*;
use rsandbox::{ErrorKind, Seccomp, Status, Want};

fn status_line(text: &str, key: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn defaults_are_verified_from_inside_and_reported() {
    let r = run(&sh(
        "grep -E '^(Seccomp|NoNewPrivs|CapEff|CapBnd|CapAmb):' /proc/self/status; ulimit -c",
    ));
    let text = out(&r);
    assert!(status_line(&text, "Seccomp:").ends_with('2'), "{text}");
    assert!(status_line(&text, "NoNewPrivs:").ends_with('1'), "{text}");
    for key in ["CapEff:", "CapBnd:", "CapAmb:"] {
        assert!(
            status_line(&text, key).ends_with("0000000000000000"),
            "{key} {text}"
        );
    }
    assert!(text.ends_with("0\n"), "core size not 0: {text}");
    for f in ["seccomp", "capabilities", "no-new-privs", "rlimits"] {
        assert_eq!(r.report.feature(f).unwrap().status, Status::Enforced, "{f}");
    }
    let ll = r.report.feature("landlock").unwrap();
    if std::path::Path::new("/sys/kernel/security/landlock").exists()
        || ll.status == Status::Enforced
    {
        assert!(ll.detail.starts_with("ABI "), "{ll:?}");
    }
    assert!(r
        .report
        .mounts
        .iter()
        .any(|m| m.kind == "mask" && m.detail.contains("/proc/sys read-only")));
}

#[test]
fn root_inside_has_no_capabilities_unless_kept() {
    let mut spec = sh("grep '^CapEff:' /proc/self/status; hostname changed 2>&1 || true");
    spec.user.uid = Some(0);
    spec.user.gid = Some(0);
    let r = run(&spec);
    assert!(out(&r).contains("0000000000000000"), "{}", out(&r));
    // Control: CAP_SYS_ADMIN kept, sethostname (UTS-namespaced) works.
    spec.security.capabilities = vec!["CAP_SYS_ADMIN".into()];
    spec.process.args = vec![
        "/bin/sh".into(),
        "-c".into(),
        "hostname changed && hostname".into(),
    ];
    let r = run(&spec);
    assert_eq!(out(&r), "changed\n", "{}", err(&r));
    let caps = r.report.feature("capabilities").unwrap();
    assert!(caps.detail.contains("CAP_SYS_ADMIN"), "{caps:?}");
    // Unknown names are refused.
    spec.security.capabilities = vec!["CAP_NOT_A_THING".into()];
    assert_eq!(
        rsandbox::spawn(&spec).unwrap_err().kind(),
        ErrorKind::InvalidSpec
    );
}

#[test]
fn a_custom_seccomp_profile_refuses_what_it_lists() {
    let dir = TempDir::new("seccomp");
    let profile = dir.path().join("profile.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                          "comment": "no new directories"}]}"#,
    )
    .unwrap();
    let mut spec = sh("mkdir /tmp/d && echo made");
    spec.security.seccomp = Seccomp::Profile {
        path: profile.clone(),
    };
    let r = run(&spec);
    assert!(!out(&r).contains("made"), "mkdir went through");
    assert!(err(&r).contains("Permission denied"), "{}", err(&r));
    assert!(r
        .report
        .feature("seccomp")
        .unwrap()
        .detail
        .contains("profile.json"));
    // Control: the default profile lets mkdir through.
    spec.security.seccomp = Seccomp::Default;
    assert_eq!(out(&run(&spec)), "made\n");

    // A syscall the kernel does not know, and an unsupported field, are clear errors.
    std::fs::write(&profile, r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}]}"#).unwrap();
    spec.security.seccomp = Seccomp::Profile {
        path: profile.clone(),
    };
    let e = rsandbox::spawn(&spec).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    assert!(e.to_string().contains("no_such_call"), "{e}");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "includes": {}}"#,
    )
    .unwrap();
    let e = rsandbox::spawn(&spec).unwrap_err();
    assert!(e.to_string().contains("includes"), "{e}");
    spec.security.seccomp = Seccomp::Profile {
        path: "/nonexistent/profile.json".into(),
    };
    assert_eq!(
        rsandbox::spawn(&spec).unwrap_err().kind(),
        ErrorKind::PathNotFound
    );
}

#[test]
fn foreign_architecture_syscalls_are_killed() {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        return skip("python3 is needed to issue an x32 syscall");
    }
    // getpid through the x32 ABI (nr | 0x40000000): the filter's architecture check kills it.
    let script = "import ctypes; libc=ctypes.CDLL(None); print(libc.syscall(0x40000000 | 39))";
    let r = run(&rsandbox::Spec::new(["python3", "-c", script]));
    assert_eq!(
        r.status,
        rsandbox::ExitStatus::Signaled(libc::SIGSYS),
        "{} {}",
        out(&r),
        err(&r)
    );
    // Control: without a filter the kernel answers (ENOSYS where x32 is off, or a pid).
    let mut spec = rsandbox::Spec::new(["python3", "-c", script]);
    spec.security.seccomp = Seccomp::None;
    assert!(run(&spec).status.success());
}

#[test]
fn landlock_denies_mounting_even_with_the_capability() {
    let abi = rsandbox::doctor()
        .check("landlock")
        .map(|c| c.available)
        .unwrap_or(false);
    if !abi {
        return skip("Landlock is not available on this kernel");
    }
    let mut spec = sh("mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && echo mounted");
    spec.user.uid = Some(0);
    spec.user.gid = Some(0);
    spec.security.capabilities = vec!["CAP_SYS_ADMIN".into()];
    spec.security.seccomp = Seccomp::None;
    let r = run(&spec);
    assert!(
        !out(&r).contains("mounted"),
        "mount went through under Landlock"
    );
    // Control: Landlock off, the same mount succeeds.
    spec.security.landlock.want = Want::Off;
    let r = run(&spec);
    assert_eq!(out(&r), "mounted\n", "{}", err(&r));
}

#[test]
fn rlimits_are_set() {
    let mut spec = sh("ulimit -n; ulimit -f");
    spec.security.rlimits.insert("nofile".into(), 77);
    spec.security.rlimits.insert("fsize".into(), 1024 * 100);
    assert_eq!(out(&run(&spec)), "77\n200\n");
    spec.security.rlimits.insert("bogus".into(), 1);
    assert_eq!(
        rsandbox::spawn(&spec).unwrap_err().kind(),
        ErrorKind::InvalidSpec
    );
}

#[test]
fn nested_user_namespaces_only_when_allowed() {
    let mut spec = sh("unshare -U true && echo nested");
    let r = run(&spec);
    assert!(!out(&r).contains("nested"));
    spec.security.allow_nested_userns = true;
    assert_eq!(out(&run(&spec)), "nested\n");
}

#[test]
fn landlock_tcp_rules_limit_connections_on_the_host_network() {
    let abi = rsandbox::doctor()
        .check("landlock")
        .and_then(|c| {
            c.detail
                .trim_start_matches("ABI ")
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u32>().ok())
        })
        .unwrap_or(0);
    if abi < 4 {
        return skip(&format!(
            "Landlock TCP rules need ABI 4, the kernel has {abi}"
        ));
    }
    if !std::path::Path::new("/usr/bin/python3").exists() {
        return skip("python3 is needed to open sockets inside the sandbox");
    }
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let denied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, d) = (
        allowed.local_addr().unwrap().port(),
        denied.local_addr().unwrap().port(),
    );
    let script = format!(
        "import socket\nfor p in ({a},{d}):\n    s=socket.socket(); s.settimeout(3)\n    try:\n        s.connect(('127.0.0.1',p)); print(p,'ok')\n    except OSError as e: print(p,'refused',e.errno)"
    );
    let mut spec = rsandbox::Spec::new(["python3", "-c", &script]);
    spec.network = rsandbox::Network::Host;
    spec.security.landlock.tcp_connect = vec![a];
    let r = run(&spec);
    assert_eq!(
        out(&r),
        format!("{a} ok\n{d} refused {}\n", libc::EACCES),
        "{}",
        err(&r)
    );
    // Control: without port rules both connect.
    spec.security.landlock.tcp_connect.clear();
    assert_eq!(out(&run(&spec)), format!("{a} ok\n{d} ok\n"));
}
