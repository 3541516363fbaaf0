//! Every bad input gives its own typed error that names the cause.

mod common;

use common::*;
use rsandbox::{ErrorKind, Mount, Root, Spec, Step};

fn error_of(spec: &Spec) -> rsandbox::Error {
    match rsandbox::spawn(spec) {
        Ok(mut child) => {
            let r = child.wait();
            panic!("expected an error, the sandbox ran: {r:?}")
        }
        Err(e) => e,
    }
}

#[test]
fn missing_rootfs() {
    let mut spec = sh("true");
    spec.filesystem.root = Root::Directory {
        path: "/nonexistent/rootfs".into(),
        writable: false,
    };
    let e = error_of(&spec);
    assert_eq!(e.kind(), ErrorKind::PathNotFound);
    assert!(
        e.to_string()
            .contains("rootfs not found: /nonexistent/rootfs"),
        "{e}"
    );
    assert_eq!(e.errno(), Some(rsandbox::Errno::ENOENT));
}

#[test]
fn relative_bind_source() {
    let mut spec = sh("true");
    spec.filesystem.mounts.push(Mount::Bind {
        source: "relative/dir".into(),
        destination: "/x".into(),
        readonly: true,
    });
    let e = error_of(&spec);
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    assert!(e.to_string().contains("filesystem.mounts[0].source"), "{e}");
    assert!(e.to_string().contains("absolute"), "{e}");
}

#[test]
fn missing_bind_source() {
    let mut spec = sh("true");
    spec.filesystem.mounts.push(Mount::Bind {
        source: "/nonexistent/source".into(),
        destination: "/x".into(),
        readonly: true,
    });
    let e = error_of(&spec);
    assert_eq!(e.kind(), ErrorKind::PathNotFound);
    assert!(
        e.to_string()
            .contains("bind source not found: /nonexistent/source"),
        "{e}"
    );
}

#[test]
fn relative_or_dotdot_destination() {
    for dest in ["x", "/a/../../etc"] {
        let mut spec = sh("true");
        spec.filesystem.mounts.push(Mount::Tmpfs {
            destination: dest.into(),
            size: None,
            mode: None,
        });
        assert_eq!(error_of(&spec).kind(), ErrorKind::InvalidSpec, "{dest}");
    }
}

#[test]
fn unmappable_uid() {
    let mut spec = sh("true");
    spec.user.uid = Some(u32::MAX);
    let e = error_of(&spec);
    assert_eq!(e.kind(), ErrorKind::UnmappableId);
    assert!(e.to_string().contains("cannot map uid 4294967295"), "{e}");
}

#[test]
fn executable_not_found() {
    let e = error_of(&Spec::new(["no-such-command-rsbx"]));
    assert_eq!(e.kind(), ErrorKind::ExecutableNotFound);
    assert_eq!(
        e.to_string(),
        "executable not found in sandbox: no-such-command-rsbx"
    );
    assert_eq!(e.step(), Some(Step::Exec));
    // Also by absolute path: the host has it, the sandbox does not.
    let e = error_of(&Spec::new(["/root/.cargo/bin/cargo"]));
    assert_eq!(e.kind(), ErrorKind::ExecutableNotFound);
}

#[test]
fn not_executable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("noexec");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "data\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, [0u8, 1, 2, 3]).unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o755)).unwrap();
    let with_dir = |argv0: &str| {
        let mut spec = Spec::new([argv0]);
        spec.filesystem.mounts.push(Mount::Bind {
            source: dir.path().into(),
            destination: "/t".into(),
            readonly: true,
        });
        error_of(&spec)
    };
    let e = with_dir("/t/plain");
    assert_eq!(e.kind(), ErrorKind::NotExecutable);
    assert_eq!(e.errno(), Some(rsandbox::Errno::EACCES));
    assert!(e.to_string().contains("cannot execute /t/plain"), "{e}");
    let e = with_dir("/t/garbage");
    assert_eq!(e.kind(), ErrorKind::NotExecutable);
    assert_eq!(e.errno(), Some(rsandbox::Errno::ENOEXEC));
    // A directory is not executable either.
    assert_eq!(
        error_of(&Spec::new(["/usr"])).kind(),
        ErrorKind::NotExecutable
    );
}

#[test]
fn empty_argv() {
    let e = error_of(&Spec::default());
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    assert!(e.to_string().contains("argv is empty"), "{e}");
    let e = error_of(&Spec::new([""]));
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
}

#[test]
fn nul_in_an_argument() {
    let e = error_of(&Spec::new(["echo", "a\0b"]));
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    assert!(
        e.to_string()
            .contains("process.args[1]: contains a NUL byte"),
        "{e}"
    );
    let mut spec = sh("true");
    spec.process.env.insert("K".into(), "v\0".into());
    assert_eq!(error_of(&spec).kind(), ErrorKind::InvalidSpec);
}

#[test]
fn bad_env_name_and_timeout_and_hostname() {
    let mut spec = sh("true");
    spec.process.env.insert("A=B".into(), "v".into());
    assert_eq!(error_of(&spec).kind(), ErrorKind::InvalidSpec);
    let mut spec = sh("true");
    spec.timeout = Some(-1.0);
    assert_eq!(error_of(&spec).kind(), ErrorKind::InvalidSpec);
    let mut spec = sh("true");
    spec.hostname = "x".repeat(65);
    assert_eq!(error_of(&spec).kind(), ErrorKind::InvalidSpec);
}

#[test]
fn missing_cwd_names_the_step_and_path() {
    let mut spec = sh("true");
    spec.process.cwd = Some("/does/not/exist".into());
    let e = error_of(&spec);
    assert_eq!(e.kind(), ErrorKind::Setup);
    assert_eq!(e.step(), Some(Step::Chdir));
    let text = e.to_string();
    assert!(
        text.contains("/does/not/exist") && text.contains("ENOENT"),
        "{text}"
    );
}

#[test]
fn mount_point_under_read_only_bind_names_the_path_and_remedy() {
    let mut spec = sh("true");
    spec.filesystem.mounts.push(Mount::Tmpfs {
        destination: "/usr/rsbx-new-dir".into(),
        size: None,
        mode: None,
    });
    let e = error_of(&spec);
    assert_eq!(e.kind(), ErrorKind::Setup);
    assert_eq!(e.step(), Some(Step::CreateMountPoint));
    let text = e.to_string();
    assert!(
        text.contains("/usr/rsbx-new-dir") && text.contains("EROFS"),
        "{text}"
    );
    assert!(e.remedy().is_some());
}

#[test]
fn missing_mount_point_in_read_only_rootfs() {
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let mut spec = Spec::new(["/bin/true"]);
    spec.filesystem.root = Root::Directory {
        path: rootfs.path().into(),
        writable: false,
    };
    spec.filesystem.mounts.push(Mount::Tmpfs {
        destination: "/nope".into(),
        size: None,
        mode: None,
    });
    let e = error_of(&spec);
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    assert!(e.to_string().contains("/nope"), "{e}");
}

#[test]
fn spec_json_round_trip_and_unknown_fields() {
    let mut spec = sh("echo hi");
    spec.hostname = "h".into();
    spec.timeout = Some(2.5);
    spec.filesystem.mounts.push(Mount::Tmpfs {
        destination: "/t".into(),
        size: Some(4096),
        mode: None,
    });
    let json = spec.to_json().unwrap();
    assert_eq!(Spec::from_json(&json).unwrap(), spec);
    let e = Spec::from_json(r#"{"process": {"argz": []}}"#).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    assert!(e.to_string().contains("argz"), "{e}");
    // Missing fields take defaults.
    let spec = Spec::from_json(r#"{"process": {"args": ["true"]}}"#).unwrap();
    assert_eq!(spec.hostname, "rsandbox");
}

/// `Spec::check` refuses what every start would refuse whatever the host, naming the field; a
/// spec without argv (to be given later) is sound.
#[test]
fn check_refuses_what_every_start_refuses() {
    type Change = Box<dyn Fn(&mut Spec)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "filesystem.workdir",
            Box::new(|s| s.filesystem.workdir = Some("work".into())),
        ),
        (
            "filesystem.mounts[0].source",
            Box::new(|s| {
                s.filesystem.mounts.push(rsandbox::Mount::Bind {
                    source: "rel".into(),
                    destination: "/x".into(),
                    readonly: true,
                })
            }),
        ),
        (
            "process.cwd",
            Box::new(|s| s.process.cwd = Some("/w\0rk".into())),
        ),
        (
            "process.env[\"A\"]",
            Box::new(|s| {
                s.process.env.insert("A".into(), "x\0y".into());
            }),
        ),
        (
            "process.args[0]",
            Box::new(|s| s.process.args = vec![String::new()]),
        ),
        (
            "process.args[1]",
            Box::new(|s| s.process.args = vec!["echo".into(), "a\0b".into()]),
        ),
    ];
    for (field, change) in cases {
        let mut spec = Spec::new(["true"]);
        change(&mut spec);
        let e = spec.check().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{field}: {e}");
        assert!(e.to_string().contains(field), "{field}: {e}");
        // A start refuses it the same way.
        if !spec.process.args.is_empty() {
            assert_eq!(
                rsandbox::spawn(&spec).unwrap_err().kind(),
                ErrorKind::InvalidSpec
            );
        }
    }
    let mut spec = Spec::new(["true"]);
    spec.process.args.clear();
    spec.check().unwrap();
}

/// An exec that fails says why: a path that cannot name a file gives its errno, a file whose
/// interpreter is missing says so (and the same from a pooled sandbox), arguments too large
/// for execve are the spec's fault. Control: a plain missing file is just not found.
#[test]
fn exec_failures_name_their_cause() {
    let dir = TempDir::new("exec");
    let script = dir.path().join("badinterp.sh");
    std::fs::write(&script, "#!/nonexistent/interp\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let with_dir = |argv: Vec<String>| {
        let mut spec = Spec::new(argv);
        spec.filesystem.mounts.push(Mount::Bind {
            source: dir.path().to_path_buf(),
            destination: "/d".into(),
            readonly: true,
        });
        spec
    };
    let e = error_of(&with_dir(vec!["/d/badinterp.sh".into()]));
    assert_eq!(e.kind(), ErrorKind::ExecutableNotFound, "{e}");
    assert!(e.to_string().contains("interpreter"), "{e}");
    assert_eq!(e.errno(), Some(rsandbox::Errno::ENOENT));
    let e = error_of(&with_dir(vec!["/etc/passwd/x".into()]));
    assert_eq!(e.kind(), ErrorKind::ExecutableNotFound, "{e}");
    assert_eq!(e.errno(), Some(rsandbox::Errno::ENOTDIR), "{e}");
    assert!(e.to_string().contains("ENOTDIR"), "{e}");
    let e = error_of(&with_dir(vec!["true".into(), "a".repeat(140_000)]));
    assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{e}");
    assert!(e.to_string().contains("E2BIG"), "{e}");
    // Control.
    let e = error_of(&with_dir(vec!["/d/nothing".into()]));
    assert_eq!(e.kind(), ErrorKind::ExecutableNotFound, "{e}");
    assert!(
        e.to_string()
            .starts_with("executable not found in sandbox: /d/nothing; the path is the sandbox's"),
        "{e}"
    );
    // A relative path is said to be the sandbox's working directory's.
    let e = error_of(&with_dir(vec!["./nothing".into()]));
    assert_eq!(e.kind(), ErrorKind::ExecutableNotFound, "{e}");
    assert!(e.to_string().contains("not the caller's"), "{e}");
    // A directory cannot be executed, and the message says what EACCES can mean.
    let e = error_of(&with_dir(vec!["/d".into()]));
    assert_eq!(e.kind(), ErrorKind::NotExecutable, "{e}");
    assert!(e.to_string().contains("a directory"), "{e}");
    // The pool's agent tells the same.
    let Ok(pool) = rsandbox::Pool::new(&with_dir(vec!["true".into()]), 1) else {
        return skip("no pool here");
    };
    let job = rsandbox::Process {
        args: vec!["/d/badinterp.sh".into()],
        ..Default::default()
    };
    let e = pool.run(&job, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ExecutableNotFound, "{e}");
    assert!(e.to_string().contains("interpreter"), "{e}");
}

/// A JSON spec with a value of the wrong type names the field by its path.
#[test]
fn json_spec_errors_name_the_field() {
    for (text, field) in [
        (r#"{"limits": {"memory": -1}}"#, "limits.memory"),
        (r#"{"process": {"args": ["echo", 1]}}"#, "process.args[1]"),
        (r#"{"user": {"uid": "0"}}"#, "user.uid"),
        (r#"{"timeout": "5"}"#, "timeout"),
    ] {
        let e = Spec::from_json(text).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{text}: {e}");
        assert!(
            e.to_string()
                .starts_with(&format!("invalid spec: {field}: ")),
            "{text}: {e}"
        );
    }
    // An unknown field is named with the ones there are; trailing text is refused.
    let e = Spec::from_json(r#"{"limits": {"memroy": 1}}"#).unwrap_err();
    assert!(
        e.to_string().contains("memroy") && e.to_string().contains("memory"),
        "{e}"
    );
    assert!(Spec::from_json("{} x").is_err());
    // Control: the same fields with values of their type.
    Spec::from_json(r#"{"limits": {"memory": 1}, "process": {"args": ["echo", "1"]}}"#).unwrap();
}

/// A bind source out of this user's reach is not reported as missing: the error is an I/O one
/// naming the path and EACCES. Control: a missing one is path-not-found.
#[test]
fn an_unreachable_bind_source_is_not_called_missing() {
    let bind = |source: &str| {
        let mut spec = sh("true");
        spec.filesystem.mounts.push(Mount::Bind {
            source: source.into(),
            destination: "/x".into(),
            readonly: true,
        });
        spec
    };
    let e = error_of(&bind("/nonexistent/rsandbox-source"));
    assert_eq!(e.kind(), ErrorKind::PathNotFound, "{e}");
    if my_uid() == 0 || std::fs::metadata("/root/.").is_ok() {
        eprintln!("/root is readable here: nothing out of reach to check");
        return;
    }
    let e = error_of(&bind("/root/rsandbox-source"));
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert_eq!(e.errno(), Some(rsandbox::Errno::EACCES), "{e}");
    assert!(e.to_string().contains("/root/rsandbox-source"), "{e}");
}
